//! Documents: the user's ids, stored payloads, and the JSON Lines they come in.
//!
//! ```text
//!  docs.jsonl ──jsonl::DocReader──► (line, UserId, vector, payload)
//!                                        │        │         │
//!                         keys::KeyMap     ◄──────┘         ├──► store::DocStoreWriter ──► docs.bin
//!                              │                            └──► filter index (crate::filter)
//!                              ▼
//!                          keys.bin   (user id ↔ segment-local id)
//! ```
//!
//! | file | what |
//! |---|---|
//! | `jsonl.rs` | [`DocReader`]: one document per line, errors naming the line and the field |
//! | `store.rs` | `docs.bin`: payloads in zstd blocks; one block read per fetched document |
//! | `keys.rs` | `keys.bin`: every document's user id in segment order, and the lookup the other way |
//!
//! Inside the engine a document is its segment-local id (`u32`, the row of
//! its vector); the user's id exists only at the edges: in the input, in
//! `keys.bin`, and in answers. Specs: `format-spec/documents.md`.

mod ingest;
mod jsonl;
mod keys;
mod store;

pub use ingest::{ingest, IndexedFields, Ingested};

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, FilterError, FormatError, Result};
use crate::filter::{Filter, FilterIndex, FilterIndexBuilder, RoaringBitmap};
use crate::layout::{DOCS_FILE, FILTERS_FILE, INDEX_FILE, KEYS_FILE, TEXT_FILE};
use crate::text::{TextIndex, TextIndexBuilder};
pub use jsonl::{DocReader, Document, VectorSource};
pub use keys::{KeyMap, KEYS_MAGIC};
pub use store::{DocStore, DocStoreWriter, DEFAULT_BLOCK_BYTES, DOCS_MAGIC};

/// A document's id as the user gave it: an unsigned integer or a string.
/// Returned exactly as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserId {
    Int(u64),
    Str(String),
}

impl UserId {
    /// The JSON value of the id, as the user gave it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            UserId::Int(i) => serde_json::Value::from(*i),
            UserId::Str(s) => serde_json::Value::from(s.as_str()),
        }
    }

    /// An id from JSON: a non-negative integer or a string; `None` otherwise.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().map(UserId::Int),
            serde_json::Value::String(s) => Some(UserId::Str(s.clone())),
            _ => None,
        }
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserId::Int(i) => write!(f, "{i}"),
            UserId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UserId::Int(i) => s.serialize_u64(*i),
            UserId::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        UserId::from_json(&v)
            .ok_or_else(|| serde::de::Error::custom("an id is a non-negative integer or a string"))
    }
}

/// A segment's documents, opened: user ids and the filter index in RAM,
/// payloads on disk (one block read per fetch).
#[derive(Debug)]
pub struct Documents {
    keys: KeyMap,
    store: DocStore,
    filters: Option<FilterIndex>,
    text: Option<TextIndex>,
}

/// Which payload fields to return with a hit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Include {
    /// None (the default): ids and distances only, no payload read.
    #[default]
    Nothing,
    /// Every field (`"*"`).
    All,
    /// These fields, where a document has them.
    Fields(Vec<String>),
}

impl Include {
    /// The fields of a whole payload this asks for.
    pub fn project(&self, all: Map<String, Value>) -> Map<String, Value> {
        match self {
            Include::Nothing => Map::new(),
            Include::All => all,
            Include::Fields(names) => all
                .into_iter()
                .filter(|(k, _)| names.iter().any(|n| n == k))
                .collect(),
        }
    }

    /// From a list of names: empty → nothing, `["*"]` → all.
    pub fn from_names(names: &[String]) -> Self {
        if names.is_empty() {
            Include::Nothing
        } else if names.iter().any(|n| n == "*") {
            Include::All
        } else {
            Include::Fields(names.to_vec())
        }
    }
}

impl Documents {
    /// Opens the documents of the segment in `dir`, `Ok(None)` if it has
    /// none. `num_points` is the index's point count, which every file must
    /// agree with.
    pub fn open(dir: &Path, num_points: u64) -> Result<Option<Self>> {
        let keys_path = dir.join(KEYS_FILE);
        if !keys_path.exists() {
            return Ok(None);
        }
        let keys = KeyMap::read(&keys_path)?;
        let store = DocStore::open(&dir.join(DOCS_FILE))?;
        let filters_path = dir.join(FILTERS_FILE);
        let filters = if filters_path.exists() {
            Some(FilterIndex::read(&filters_path)?)
        } else {
            None
        };
        let text_path = dir.join(TEXT_FILE);
        let text = if text_path.exists() {
            Some(TextIndex::open(&text_path)?)
        } else {
            None
        };
        let counts = [
            (KEYS_FILE, keys.len() as u64),
            (DOCS_FILE, store.len() as u64),
            (
                FILTERS_FILE,
                filters.as_ref().map_or(num_points, |f| f.num_docs() as u64),
            ),
            (
                TEXT_FILE,
                text.as_ref().map_or(num_points, TextIndex::num_docs),
            ),
        ];
        for (file, count) in counts {
            if count != num_points {
                return Err(Error::format(
                    dir.join(file),
                    FormatError::Invalid {
                        field: "document count",
                        value: count,
                        why: format!("{INDEX_FILE} has {num_points} points"),
                    },
                ));
            }
        }
        Ok(Some(Documents {
            keys,
            store,
            filters,
            text,
        }))
    }

    /// Puts what [`ingest`] read into a segment directory (for documents
    /// `0..n` in ingest order): moves `docs.bin`, writes `keys.bin` and
    /// `filters.bin`.
    pub fn install(ingested: &Ingested, seg_dir: &Path) -> Result<()> {
        let to = seg_dir.join(DOCS_FILE);
        std::fs::rename(&ingested.store, &to).map_err(|e| Error::io(&to, e))?;
        ingested.keys.write(&seg_dir.join(KEYS_FILE))?;
        if let Some(f) = &ingested.filters {
            f.write(&seg_dir.join(FILTERS_FILE))?;
        }
        if let Some(t) = &ingested.text {
            let to = seg_dir.join(TEXT_FILE);
            std::fs::rename(t, &to).map_err(|e| Error::io(&to, e))?;
        }
        Ok(())
    }

    /// Writes the documents `members` (ingest-order ids, ascending) of what
    /// [`ingest`] read into a segment directory as its documents `0, 1, …`:
    /// the part of a sharded build that lands in one shard.
    pub fn install_subset(ingested: &Ingested, members: &[u32], seg_dir: &Path) -> Result<()> {
        let source = DocStore::open(&ingested.store)?;
        let f = &ingested.fields;
        let text = (!f.text.is_empty()).then_some((&f.text[..], f.analyzer));
        let mut out = DocsWriter::create(seg_dir, &ingested.store, &f.filter, text)?;
        for chunk in members.chunks(4096) {
            for (payload, &global) in source.get_many(chunk)?.into_iter().zip(chunk) {
                out.add(&payload, None, ingested.keys.key(global))?;
            }
        }
        out.finish()
    }

    /// Writes a merged segment's documents into `seg_dir`: the documents
    /// `keep` of `old` (segment-local ids, ascending) as documents
    /// `0..keep.len()`, then `added` after them, with the same filter
    /// fields and text fields (and analyzer) as `old`. Every file is
    /// written anew: its cost is the segment's size, not the changes'.
    pub fn write_merged(
        old: &Documents,
        keep: &[u32],
        added: &[(UserId, &Map<String, Value>)],
        seg_dir: &Path,
    ) -> Result<()> {
        let names: Vec<String> = old.filters.as_ref().map_or_else(Vec::new, |f| {
            f.schema().names().map(str::to_string).collect()
        });
        let text = old.text.as_ref().map(|t| (t.fields(), t.analyzer()));
        let mut out = DocsWriter::create(seg_dir, old.store.path(), &names, text)?;
        for chunk in keep.chunks(4096) {
            for (payload, &doc) in old.store.get_many(chunk)?.into_iter().zip(chunk) {
                out.add(&payload, None, old.keys.key(doc))?;
            }
        }
        for (id, map) in added {
            let payload = serde_json::to_vec(map).unwrap_or_else(|_| b"{}".to_vec());
            out.add(&payload, Some(map), id.clone())?;
        }
        out.finish()
    }

    pub fn keys(&self) -> &KeyMap {
        &self.keys
    }

    pub fn store(&self) -> &DocStore {
        &self.store
    }

    pub fn filters(&self) -> Option<&FilterIndex> {
        self.filters.as_ref()
    }

    /// The BM25 text index, when the segment was built with text fields.
    pub fn text(&self) -> Option<&TextIndex> {
        self.text.as_ref()
    }

    /// Bytes of RAM held: ids, block table, filter index.
    pub fn memory_bytes(&self) -> usize {
        self.keys.memory_bytes()
            + self.store.memory_bytes()
            + self
                .filters
                .as_ref()
                .map_or(0, |f| f.memory_bytes() as usize)
    }

    /// The segment-local ids `filter` matches.
    pub fn evaluate(&self, filter: &Filter) -> Result<RoaringBitmap> {
        let index = self
            .filters
            .as_ref()
            .ok_or_else(|| FilterError::NotIndexed {
                field: filter.fields().first().map_or("", |f| f).to_string(),
                indexed: "none: this index was built without --filter-fields".into(),
            })?;
        Ok(index.evaluate(filter)?)
    }

    /// The payload fields `include` asks for, of each of `docs`
    /// (segment-local ids), in order. Nothing is read for
    /// [`Include::Nothing`].
    pub fn fetch(&self, docs: &[u32], include: &Include) -> Result<Vec<Map<String, Value>>> {
        if *include == Include::Nothing {
            return Ok(vec![Map::new(); docs.len()]);
        }
        let raw = self.store.get_many(docs)?;
        raw.into_iter()
            .zip(docs)
            .map(|(bytes, &doc)| {
                let all: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::format(
                        self.store.path(),
                        FormatError::Invalid {
                            field: "document",
                            value: doc.into(),
                            why: format!("stored payload is not a JSON object: {e}"),
                        },
                    )
                })?;
                Ok(include.project(all))
            })
            .collect()
    }
}

/// Writes a segment's document files (`docs.bin`, `keys.bin`, and
/// `filters.bin` and `text.bin` when it has such fields) one document at a
/// time, as documents `0, 1, …`.
struct DocsWriter<'a> {
    seg_dir: &'a Path,
    /// Where the payloads come from, named when one is not a JSON object.
    source: &'a Path,
    store: DocStoreWriter,
    filters: Option<FilterIndexBuilder>,
    text: Option<TextIndexBuilder>,
    ids: Vec<UserId>,
}

impl<'a> DocsWriter<'a> {
    fn create(
        seg_dir: &'a Path,
        source: &'a Path,
        filter_fields: &[String],
        text: Option<(&[String], crate::text::Analyzer)>,
    ) -> Result<Self> {
        Ok(DocsWriter {
            store: DocStoreWriter::create(&seg_dir.join(DOCS_FILE), DEFAULT_BLOCK_BYTES)?,
            filters: if filter_fields.is_empty() {
                None
            } else {
                Some(FilterIndexBuilder::new(filter_fields)?)
            },
            text: match text {
                Some((fields, analyzer)) => Some(TextIndexBuilder::new(
                    fields,
                    analyzer,
                    &seg_dir.join(".text-scratch"),
                )?),
                None => None,
            },
            seg_dir,
            source,
            ids: Vec::new(),
        })
    }

    /// The next document: its payload's JSON bytes (parsed here, unless
    /// `parsed` is given, when a filter or text index needs the fields).
    fn add(
        &mut self,
        payload: &[u8],
        parsed: Option<&Map<String, Value>>,
        id: UserId,
    ) -> Result<()> {
        let local = self.ids.len() as u32;
        if self.filters.is_some() || self.text.is_some() {
            let owned;
            let map = match parsed {
                Some(m) => m,
                None => {
                    owned = serde_json::from_slice::<Map<String, Value>>(payload).map_err(|e| {
                        Error::format(
                            self.source,
                            FormatError::Invalid {
                                field: "document",
                                value: local.into(),
                                why: format!("stored payload is not a JSON object: {e}"),
                            },
                        )
                    })?;
                    &owned
                }
            };
            if let Some(f) = self.filters.as_mut() {
                f.add(local, map)?;
            }
            if let Some(t) = self.text.as_mut() {
                t.add(local, map)
                    .map_err(|e| Error::text(self.seg_dir.join(TEXT_FILE), e))?;
            }
        }
        self.store.add(payload)?;
        self.ids.push(id);
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.store.finish()?;
        let keys = self.seg_dir.join(KEYS_FILE);
        KeyMap::from_ids(self.ids)
            .map_err(|e| Error::docs(&keys, e))?
            .write(&keys)?;
        if let Some(f) = self.filters {
            f.finish().write(&self.seg_dir.join(FILTERS_FILE))?;
        }
        if let Some(t) = self.text {
            t.finish(&self.seg_dir.join(TEXT_FILE))?;
        }
        Ok(())
    }
}
