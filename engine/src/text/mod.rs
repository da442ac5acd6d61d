//! BM25 text search over documents' payload fields, with tantivy.
//!
//! ```text
//!  build:  payload ──fields joined──► tantivy (one field "body", fast field "sid" = local id)
//!                                        └── merged to one segment ──pack──► text.bin
//!  search: text ──analyze──► terms ──► stats (per shard) ──sum──► global TextStats
//!                                                   │
//!          terms + global stats ──► BM25 top-k per shard (scores comparable) ──► merge
//! ```
//!
//! Why global statistics: BM25 weighs a term by how many documents hold it
//! and a document by its length against the average; both differ between
//! shards, so shard-local scores do not compare. A query first collects,
//! for its terms, the document frequencies and the token and document
//! counts of every shard ([`TextIndex::stats`]), sums them
//! ([`TextStats::add`]), and every shard scores with the sums: the merged
//! top-k ranks as one index over the whole corpus would.
//!
//! The analyzer (how text becomes terms) is chosen at build time and named
//! in the index, so queries are analyzed as the documents were
//! ([`Analyzer`]). Spec of `text.bin`: `format-spec/text.md`.

mod pack;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::{Bm25StatisticsProvider, BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    LowerCaser, RegexTokenizer, RemoveLongFilter, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::error::{Error, Result, TextError};

use pack::PackedDirectory;
pub use pack::TEXT_MAGIC;

/// The packed file holding what shardann itself records about the index.
const META_FILE: &str = "shardann-text.json";
/// The tantivy field all text fields are indexed into.
const BODY: &str = "body";
/// The fast field holding each document's segment-local id.
const SID: &str = "sid";
/// Tokens longer than this (bytes) are dropped: base64, hashes, tables.
const MAX_TOKEN_BYTES: usize = 64;
/// Memory for tantivy's indexing buffer; beyond it tantivy flushes a
/// segment (merged into one at the end).
const WRITER_BYTES: usize = 128 << 20;

/// How text becomes terms; the same at build and at query time.
///
/// All split on `\w\w+` (Unicode word characters, at least two, so
/// `O_DIRECT` and `perf_event_open` stay whole, as identifiers in technical
/// text must) and lower-case. Chosen by measurement on manpages-dev (see
/// the README's "Measured" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Analyzer {
    /// Words, lower-cased.
    Words,
    /// Words, lower-cased, English stop words removed.
    WordsStop,
    /// Words, lower-cased, English stop words removed, Porter-stemmed: the
    /// default, by measurement (manpages-dev BM25 nDCG@10: 0.2623 against
    /// 0.2303 without stemming and 0.2253 without stop words either).
    #[default]
    WordsStopStem,
}

impl Analyzer {
    pub const ALL: [Analyzer; 3] = [
        Analyzer::Words,
        Analyzer::WordsStop,
        Analyzer::WordsStopStem,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Analyzer::Words => "words",
            Analyzer::WordsStop => "words-stop",
            Analyzer::WordsStopStem => "words-stop-stem",
        }
    }

    /// The tokenizer's name inside the tantivy schema.
    fn tokenizer_name(self) -> String {
        format!("shardann-{}", self.name())
    }

    fn analyzer(self) -> TextAnalyzer {
        // The pattern is a constant that compiles; a failure here is a bug
        // caught by every test that builds a text index.
        let words = RegexTokenizer::new(r"\w\w+").unwrap_or_else(|_| unreachable!());
        let base = TextAnalyzer::builder(words)
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .dynamic();
        let stop = || StopWordFilter::new(tantivy::tokenizer::Language::English);
        match self {
            Analyzer::Words => base.build(),
            Analyzer::WordsStop => match stop() {
                Some(s) => base.filter_dynamic(s).build(),
                None => base.build(),
            },
            Analyzer::WordsStopStem => {
                let b = match stop() {
                    Some(s) => base.filter_dynamic(s),
                    None => base,
                };
                b.filter_dynamic(Stemmer::new(tantivy::tokenizer::Language::English))
                    .build()
            }
        }
    }

    fn register(index: &Index) {
        for a in Analyzer::ALL {
            index
                .tokenizers()
                .register(&a.tokenizer_name(), a.analyzer());
        }
    }
}

impl std::str::FromStr for Analyzer {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Analyzer::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Analyzer::ALL.iter().map(|a| a.name()).collect();
                format!("unknown analyzer {s:?} (known: {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `text.bin` records beside the tantivy files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TextMeta {
    /// Payload fields indexed, in the order they are joined.
    fields: Vec<String>,
    analyzer: Analyzer,
    num_docs: u64,
}

fn tantivy_err(what: &'static str) -> impl FnOnce(tantivy::TantivyError) -> TextError {
    move |e| TextError::Tantivy {
        what,
        message: e.to_string(),
    }
}

/// Runs `f`, turning a panic inside tantivy into a [`TextError`].
///
/// tantivy trusts the bytes of its files: a damaged term dictionary panics
/// in its FST reader, out-of-range offsets in its file slicing
/// (`engine/tests/fuzz.rs` found both within 64 cases). `text.bin` packs
/// those files with no checksum of their own (the segment manifest holds
/// one for the whole file, checked by `verify` and by a pull, not at every
/// open), so a text query on a damaged file would take a node's executor
/// down with it. Our own code holds no state across this call that a
/// panic could leave half-changed, hence `AssertUnwindSafe`.
fn guarded<T>(
    what: &'static str,
    f: impl FnOnce() -> std::result::Result<T, TextError>,
) -> std::result::Result<T, TextError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(TextError::Tantivy {
            what,
            message: format!("tantivy panicked, text.bin is damaged ({message})"),
        })
    })
}

/// The schema: one text field, one fast u64 field.
fn schema(analyzer: Analyzer) -> (Schema, Field, Field) {
    let mut b = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(&analyzer.tokenizer_name())
        .set_index_option(IndexRecordOption::WithFreqs);
    let body = b.add_text_field(BODY, TextOptions::default().set_indexing_options(indexing));
    let sid = b.add_u64_field(SID, NumericOptions::default().set_fast());
    (b.build(), body, sid)
}

/// The text of the fields `fields` of one payload, joined by newlines:
/// strings and arrays of strings; absent or `null` fields add nothing.
pub fn text_of(
    payload: &Map<String, Value>,
    fields: &[String],
) -> std::result::Result<String, TextError> {
    let mut out = String::new();
    let mut push = |s: &str| {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(s);
    };
    for f in fields {
        match payload.get(f) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => push(s),
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(s) => push(s),
                        Value::Null => {}
                        other => {
                            return Err(TextError::NotText {
                                field: f.clone(),
                                got: json_kind(other),
                            })
                        }
                    }
                }
            }
            Some(other) => {
                return Err(TextError::NotText {
                    field: f.clone(),
                    got: json_kind(other),
                })
            }
        }
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a nested array",
        Value::Object(_) => "an object",
    }
}

/// Builds a text index, one document at a time, in a scratch directory;
/// [`TextIndexBuilder::finish`] packs it into `text.bin`.
pub struct TextIndexBuilder {
    scratch: std::path::PathBuf,
    writer: IndexWriter,
    index: Index,
    body: Field,
    sid: Field,
    meta: TextMeta,
}

impl TextIndexBuilder {
    /// A builder indexing `fields` with `analyzer`, working in `scratch`
    /// (created; removed by `finish`).
    pub fn new(fields: &[String], analyzer: Analyzer, scratch: &Path) -> Result<Self> {
        if fields.is_empty() {
            return Err(Error::InvalidParameter("no text fields to index".into()));
        }
        if scratch.exists() {
            std::fs::remove_dir_all(scratch).map_err(|e| Error::io(scratch, e))?;
        }
        std::fs::create_dir_all(scratch).map_err(|e| Error::io(scratch, e))?;
        let (schema, body, sid) = schema(analyzer);
        let text = |e| Error::text(scratch, e);
        let index = Index::create_in_dir(scratch, schema)
            .map_err(tantivy_err("creating the index"))
            .map_err(text)?;
        Analyzer::register(&index);
        // One indexing thread: builds run their own rayon pools, and the
        // text index is small beside the graph.
        let writer = index
            .writer_with_num_threads(1, WRITER_BYTES)
            .map_err(tantivy_err("opening the writer"))
            .map_err(text)?;
        Ok(TextIndexBuilder {
            scratch: scratch.to_path_buf(),
            writer,
            index,
            body,
            sid,
            meta: TextMeta {
                fields: fields.to_vec(),
                analyzer,
                num_docs: 0,
            },
        })
    }

    /// The fields indexed.
    pub fn fields(&self) -> &[String] {
        &self.meta.fields
    }

    /// Adds document `local_id` (segment-local ids, added in order).
    pub fn add(
        &mut self,
        local_id: u32,
        payload: &Map<String, Value>,
    ) -> std::result::Result<(), TextError> {
        let text = text_of(payload, &self.meta.fields)?;
        let mut doc = TantivyDocument::default();
        doc.add_text(self.body, &text);
        doc.add_u64(self.sid, local_id.into());
        self.writer
            .add_document(doc)
            .map_err(tantivy_err("adding a document"))?;
        self.meta.num_docs += 1;
        Ok(())
    }

    /// Commits, merges into one segment, and writes `text.bin` to `out`.
    pub fn finish(mut self, out: &Path) -> Result<()> {
        let scratch = self.scratch.clone();
        let text = |e| Error::text(&scratch, e);
        self.writer
            .commit()
            .map_err(tantivy_err("committing"))
            .map_err(text)?;
        let ids = self
            .index
            .searchable_segment_ids()
            .map_err(tantivy_err("listing segments"))
            .map_err(text)?;
        if ids.len() > 1 {
            self.writer
                .merge(&ids)
                .wait()
                .map_err(tantivy_err("merging segments"))
                .map_err(text)?;
        }
        self.writer
            .garbage_collect_files()
            .wait()
            .map_err(tantivy_err("removing merged files"))
            .map_err(text)?;
        self.writer
            .wait_merging_threads()
            .map_err(tantivy_err("finishing merges"))
            .map_err(text)?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&scratch).map_err(|e| Error::io(&scratch, e))? {
            let entry = entry.map_err(|e| Error::io(&scratch, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Lock files are the writer's, not the index's.
            if name.starts_with(".tantivy-") || !entry.path().is_file() {
                continue;
            }
            let bytes = std::fs::read(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            files.push((name, bytes));
        }
        let meta = serde_json::to_vec(&self.meta).map_err(|e| {
            Error::text(
                out,
                TextError::Tantivy {
                    what: "writing the metadata",
                    message: e.to_string(),
                },
            )
        })?;
        files.push((META_FILE.into(), meta));
        let bytes = pack::pack(files).map_err(|e| Error::format(out, e))?;
        crate::fs::write_atomic(out, &bytes)?;
        std::fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        Ok(())
    }
}

/// A query, analyzed: its terms in order (repeats kept, as BM25 over a
/// query's tokens counts them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TextQuery {
    pub terms: Vec<String>,
}

/// The corpus statistics BM25 needs for one query's terms: summed over
/// shards, they make scores global.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TextStats {
    pub num_docs: u64,
    pub num_tokens: u64,
    /// Documents holding each distinct term of the query.
    pub doc_freq: HashMap<String, u64>,
}

impl TextStats {
    /// Adds another shard's statistics for the same query.
    pub fn add(&mut self, other: &TextStats) {
        self.num_docs += other.num_docs;
        self.num_tokens += other.num_tokens;
        for (t, n) in &other.doc_freq {
            *self.doc_freq.entry(t.clone()).or_default() += n;
        }
    }
}

/// [`TextStats`] as tantivy asks for them.
struct StatsProvider<'a> {
    stats: &'a TextStats,
}

impl Bm25StatisticsProvider for StatsProvider<'_> {
    fn total_num_tokens(&self, _field: Field) -> tantivy::Result<u64> {
        Ok(self.stats.num_tokens)
    }
    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.stats.num_docs)
    }
    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let value = term.value();
        let text = value.as_str().unwrap_or_default();
        Ok(self.stats.doc_freq.get(text).copied().unwrap_or(0))
    }
}

/// A segment's text index, opened from `text.bin`.
pub struct TextIndex {
    reader: IndexReader,
    /// Built once: the regex tokenizer is costly to compile, cheap to clone.
    analyzer: TextAnalyzer,
    index: Index,
    body: Field,
    meta: TextMeta,
    bytes: u64,
}

impl std::fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndex")
            .field("meta", &self.meta)
            .finish()
    }
}

impl TextIndex {
    /// Opens `text.bin`; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let dir = PackedDirectory::open(path)?;
        let text = |e| Error::text(path, e);
        let meta: TextMeta = dir
            .file(META_FILE)
            .ok_or(TextError::Missing { what: META_FILE })
            .and_then(|b| {
                serde_json::from_slice(b).map_err(|e| TextError::Tantivy {
                    what: "reading the metadata",
                    message: e.to_string(),
                })
            })
            .map_err(text)?;
        let bytes = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let (index, body, reader) = guarded("opening the index", || {
            let index = Index::open(dir).map_err(tantivy_err("opening the index"))?;
            Analyzer::register(&index);
            let body = index
                .schema()
                .get_field(BODY)
                .map_err(tantivy_err("reading the schema"))?;
            let reader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()
                .map_err(tantivy_err("opening a reader"))?;
            Ok((index, body, reader))
        })
        .map_err(text)?;
        Ok(TextIndex {
            reader,
            analyzer: meta.analyzer.analyzer(),
            index,
            body,
            meta,
            bytes,
        })
    }

    /// Documents indexed.
    pub fn num_docs(&self) -> u64 {
        self.meta.num_docs
    }

    /// The payload fields indexed.
    pub fn fields(&self) -> &[String] {
        &self.meta.fields
    }

    pub fn analyzer(&self) -> Analyzer {
        self.meta.analyzer
    }

    /// Bytes of `text.bin` (mapped, not read into RAM).
    pub fn file_bytes(&self) -> u64 {
        self.bytes
    }

    /// The terms of `text`, analyzed as the documents were.
    pub fn analyze(&self, text: &str) -> TextQuery {
        terms_of(&mut self.analyzer.clone(), text)
    }

    /// This segment's statistics for `query`'s terms.
    pub fn stats(&self, query: &TextQuery) -> std::result::Result<TextStats, TextError> {
        guarded("reading text statistics", || self.stats_unguarded(query))
    }

    fn stats_unguarded(&self, query: &TextQuery) -> std::result::Result<TextStats, TextError> {
        let searcher = self.reader.searcher();
        let mut stats = TextStats {
            num_docs: searcher
                .total_num_docs()
                .map_err(tantivy_err("counting documents"))?,
            num_tokens: searcher
                .total_num_tokens(self.body)
                .map_err(tantivy_err("counting tokens"))?,
            doc_freq: HashMap::new(),
        };
        for t in &query.terms {
            if stats.doc_freq.contains_key(t) {
                continue;
            }
            let n = searcher
                .doc_freq(&Term::from_field_text(self.body, t))
                .map_err(tantivy_err("reading a document frequency"))?;
            stats.doc_freq.insert(t.clone(), n);
        }
        Ok(stats)
    }

    /// The `k` best documents for `query` by BM25 with the statistics
    /// `stats` (this segment's own when `None`), among `allowed` when
    /// given: (segment-local id, score), best first, ties by id.
    pub fn search(
        &self,
        query: &TextQuery,
        stats: Option<&TextStats>,
        k: usize,
        allowed: Option<Arc<RoaringBitmap>>,
    ) -> std::result::Result<Vec<(u32, f32)>, TextError> {
        if k == 0 || query.terms.is_empty() {
            return Ok(Vec::new());
        }
        guarded("searching text", || {
            self.search_unguarded(query, stats, k, allowed)
        })
    }

    fn search_unguarded(
        &self,
        query: &TextQuery,
        stats: Option<&TextStats>,
        k: usize,
        allowed: Option<Arc<RoaringBitmap>>,
    ) -> std::result::Result<Vec<(u32, f32)>, TextError> {
        let local;
        let stats = match stats {
            Some(s) => s,
            None => {
                local = self.stats(query)?;
                &local
            }
        };
        let clauses: Vec<(Occur, Box<dyn Query>)> = query
            .terms
            .iter()
            .map(|t| {
                let q = TermQuery::new(
                    Term::from_field_text(self.body, t),
                    IndexRecordOption::WithFreqs,
                );
                (Occur::Should, Box::new(q) as Box<dyn Query>)
            })
            .collect();
        let q = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let provider = StatsProvider { stats };
        let top = TopDocs::with_limit(k).order_by_score();
        let found = match allowed {
            None => searcher.search_with_statistics_provider(&q, &top, &provider),
            Some(bitmap) => {
                let filtered = FilterCollector::new(
                    SID.to_string(),
                    move |sid: u64| u32::try_from(sid).is_ok_and(|s| bitmap.contains(s)),
                    top,
                );
                searcher.search_with_statistics_provider(&q, &filtered, &provider)
            }
        }
        .map_err(tantivy_err("searching"))?;
        let mut columns = HashMap::new();
        let mut hits = Vec::with_capacity(found.len());
        for (score, addr) in found {
            let column = match columns.entry(addr.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    searcher
                        .segment_reader(addr.segment_ord)
                        .fast_fields()
                        .u64(SID)
                        .map_err(tantivy_err("reading local ids"))?,
                ),
            };
            let sid = column
                .first(addr.doc_id)
                .and_then(|s| u32::try_from(s).ok())
                .ok_or(TextError::Missing { what: "local id" })?;
            hits.push((sid, score));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(hits)
    }

    /// tantivy's index, for tests and inspection.
    pub fn tantivy(&self) -> &Index {
        &self.index
    }
}

/// The terms of `text` under `analyzer`.
pub fn analyze(analyzer: Analyzer, text: &str) -> TextQuery {
    terms_of(&mut analyzer.analyzer(), text)
}

fn terms_of(a: &mut TextAnalyzer, text: &str) -> TextQuery {
    let mut stream = a.token_stream(text);
    let mut terms = Vec::new();
    while let Some(t) = stream.next() {
        terms.push(t.text.clone());
    }
    TextQuery { terms }
}

#[cfg(test)]
mod tests;
